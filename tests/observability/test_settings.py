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
