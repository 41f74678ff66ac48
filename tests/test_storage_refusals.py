"""Storage that cannot be reached is one line and exit 2 before Ray starts (issue 29): a bucket that
does not exist on a reachable server, and a server that cannot be reached at all."""
from __future__ import annotations


from fgray.sweep import main

DEMO = "sweeps/demo.yaml"


def test_a_missing_bucket_is_one_line_before_ray(s3_bucket, capsys):
    code = main([DEMO, "--storage", "s3://no-such-bucket-fgray/results"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: storage s3://no-such-bucket-fgray/results: cannot be reached")
    assert "no-such-bucket-fgray" in err[0]


def test_an_unreachable_endpoint_is_one_line_naming_the_cause(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9 (discard)
    code = main([DEMO, "--storage", "s3://fgray-test/results"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: storage s3://fgray-test/results: cannot be reached (")
    assert "connect" in err[0].lower()
