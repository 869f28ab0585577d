"""Secrets in a run's config never reach a page (relay report, the dashboard) nor a viewer token:
the one rule, relaytrain.config.redact."""

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


def test_numbers_under_secret_sounding_names_are_kept_and_other_words_hidden():
    out = redact_secrets({"trainer": {"max_new_tokens": 8, "use_key": True, "key_count": None,
                                      "env": {"MY_SIGNATURE": "sig", "GCP_CREDENTIALS": "c", "keyboard": "qwerty"}}})
    assert (out["trainer"]["max_new_tokens"], out["trainer"]["use_key"], out["trainer"]["key_count"]) == (8, True, None)
    assert out["trainer"]["env"] == {"MY_SIGNATURE": REDACTED, "GCP_CREDENTIALS": REDACTED, "keyboard": REDACTED}


def test_credentials_inside_urls_are_hidden():
    out = redact_secrets({
        "store": {"uri": "s3://bucket/prefix", "endpoint_url": "https://minio:s3cr3t@minio.lan:9000/x"},
        "a": "https://ghp_abcdef@github.com/org/repo.git",
        "b": "see https://host/path?token=abc&page=2 and http://u:pw@h/",
        "c": "https://host/file?X-Amz-Signature=deadbeef&X-Amz-Date=1",
    })
    assert out["store"] == {"uri": "s3://bucket/prefix", "endpoint_url": f"https://minio:{REDACTED}@minio.lan:9000/x"}
    assert out["a"] == f"https://{REDACTED}@github.com/org/repo.git"
    assert out["b"] == f"see https://host/path?token={REDACTED}&page=2 and http://u:{REDACTED}@h/"
    assert out["c"] == f"https://host/file?X-Amz-Signature={REDACTED}&X-Amz-Date=1"
    for text in map(str, out.values()):
        assert "s3cr3t" not in text and "ghp_abcdef" not in text and "deadbeef" not in text and "pw@" not in text
