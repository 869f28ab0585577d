"""The calculator environment as an OpenEnv server (HTTP, and WebSocket sessions at ``/ws``).

    python examples/envs/calculator/server.py --port 8001
    CALC_STEP_DELAY_S=0.05 python examples/envs/calculator/server.py --port 8001   # a slow tool
"""

from __future__ import annotations

import argparse

from calculator_env import CalcAction, CalcObservation, CalculatorEnvironment, Faults
from openenv.core.env_server.http_server import create_app

Faults.from_environ()  # a bad CALC_* knob stops the server here, not every session later
app = create_app(CalculatorEnvironment, CalcAction, CalcObservation, max_concurrent_envs=64)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
