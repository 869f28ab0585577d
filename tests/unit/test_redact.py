"""Secret-named values in a run's config never reach a page (relay report, the dashboard)."""

from relaytrain.config import REDACTED, redact_secrets


def test_secret_named_keys_are_redacted_anywhere():
    config = {"run_id": "r", "trainer": {"env": {"HF_TOKEN": "hf_x", "WANDB_API_KEY": "k", "db_password": "p",
                                                 "MY_SECRET": "s", "BATCH": "8"}},
              "store": {"uri": "s3://b", "keys": ["a"]}, "list": [{"aws_secret_access_key": "z", "n": 1}]}
    out = redact_secrets(config)
    assert out["trainer"]["env"] == {"HF_TOKEN": REDACTED, "WANDB_API_KEY": REDACTED, "db_password": REDACTED,
                                     "MY_SECRET": REDACTED, "BATCH": "8"}
    assert out["store"] == {"uri": "s3://b", "keys": REDACTED}
    assert out["list"] == [{"aws_secret_access_key": REDACTED, "n": 1}]
    assert config["trainer"]["env"]["HF_TOKEN"] == "hf_x"  # a copy: the input is unchanged
