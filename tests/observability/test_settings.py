"""The observability settings: defaults, and malformed values that stop the start."""

from __future__ import annotations

from pathlib import Path

from tests.settings_probe import settings_probe


def test_defaults_plain_logs_in_debug_no_tracing_and_a_metrics_folder_per_host(tmp_path: Path) -> None:
    result = settings_probe(
        tmp_path,
        {"DJANGO_DEBUG": "true", "METRICS_ALLOWED_IPS": "10.0.0.1, 192.168.0.0/16"},
        "print(s.LOG_FORMAT, s.LOG_CONTENT, s.OTEL_TRACES_EXPORTER, s.METRICS_ALLOWED_IPS, "
        "os.environ['PROMETHEUS_MULTIPROC_DIR'] == str(s.PROMETHEUS_MULTIPROC_DIR), "
        "s.PROMETHEUS_MULTIPROC_DIR.parent == s.VAR_DIR / 'metrics', s.PROMETHEUS_MULTIPROC_DIR.is_dir())",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain False [] ['10.0.0.1/32', '192.168.0.0/16'] True True True"


def test_a_malformed_allow_list_stops_the_start(tmp_path: Path) -> None:
    result = settings_probe(tmp_path, {"METRICS_ALLOWED_IPS": "10.0.0.0/8,intranet"}, "print(1)")

    assert result.returncode != 0
    assert "METRICS_ALLOWED_IPS" in result.stderr and "intranet" in result.stderr


def test_metrics_and_readiness_details_default_to_loopback_and_private_networks(tmp_path: Path) -> None:
    code = "print(s.METRICS_ALLOWED_IPS); print(s.READYZ_DETAIL_IPS)"

    defaults = settings_probe(tmp_path, {}, code)
    opened = settings_probe(tmp_path, {"METRICS_ALLOWED_IPS": "0.0.0.0/0,::/0", "READYZ_DETAIL_IPS": "10.1.2.3"}, code)

    assert defaults.returncode == 0, defaults.stderr
    assert defaults.stdout.splitlines() == [
        "['127.0.0.0/8', '::1/128', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7']",
        "['127.0.0.0/8', '::1/128']",
    ]
    assert opened.stdout.splitlines() == ["['0.0.0.0/0', '::/0']", "['10.1.2.3/32']"]
