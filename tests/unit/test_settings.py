"""Server settings: flags and CONVSERVE_* variables, validated at start with the setting named."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from service.settings import add_server_arguments, settings_from_args


def parse(argv: list[str], monkeypatch, **env: str):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    return settings_from_args(parser.parse_args(argv))


def test_http2_options_default_to_grpcs_own_and_can_be_raised(monkeypatch):
    defaults = parse([], monkeypatch)
    assert (defaults.http2_max_frame_bytes, defaults.http2_lookahead_bytes) == (0, 0)
    raised = parse(["--http2-max-frame-bytes", "1048576"], monkeypatch, CONVSERVE_HTTP2_LOOKAHEAD_BYTES="4194304")
    assert (raised.http2_max_frame_bytes, raised.http2_lookahead_bytes) == (1 << 20, 4 << 20)


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--http2-max-frame-bytes", "1000"], "http2_max_frame_bytes"),  # below HTTP/2's 16384 minimum
        (["--http2-max-frame-bytes", str(1 << 24)], "http2_max_frame_bytes"),  # above 2^24 - 1
        (["--http2-lookahead-bytes", "-1"], "http2_lookahead_bytes"),
        (["--max-connection-age-s", "-5"], "max_connection_age_s"),
        (["--tls-cert", "/tmp/cert.pem"], "tls_cert and tls_key"),
    ],
)
def test_bad_settings_stop_the_server_naming_the_setting(argv, named, monkeypatch):
    with pytest.raises(ValueError, match=named):
        parse(argv, monkeypatch)


def test_stream_fairness_settings_are_validated(monkeypatch):
    defaults = parse([], monkeypatch)
    assert defaults.limits.max_streams_per_peer < defaults.limits.max_concurrent_streams
    with pytest.raises(ValueError, match="max_streams_per_peer must be <= max_concurrent_streams"):
        parse(["--max-concurrent-streams", "4", "--max-streams-per-peer", "8"], monkeypatch)
    with pytest.raises(ValueError, match="stream_idle_timeout_s must be > 0"):
        parse(["--stream-idle-timeout-s", "0"], monkeypatch)


def test_received_bytes_budget_holds_one_message_of_the_largest_size(monkeypatch):
    defaults = parse([], monkeypatch).limits
    assert defaults.max_received_bytes >= defaults.max_message_bytes
    raised = parse(
        ["--max-message-bytes", "1024", "--max-received-bytes", "1024"], monkeypatch, CONVSERVE_MAX_READS_PER_PEER="3"
    )
    assert (raised.limits.max_received_bytes, raised.limits.max_reads_per_peer) == (1024, 3)
    with pytest.raises(ValueError, match="max_received_bytes must be >= max_message_bytes"):
        parse(["--max-message-bytes", "1024", "--max-received-bytes", "1023"], monkeypatch)
    for flag, name in (
        ("--max-reads-per-peer", "max_reads_per_peer"),
        ("--message-read-timeout-s", "message_read_timeout_s"),
    ):
        with pytest.raises(ValueError, match=f"{name} must be > 0"):
            parse([flag, "0"], monkeypatch)


def test_token_files_are_checked_at_start(monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="auth_token_file .*: cannot read"):
        parse(["--auth-token-file", str(tmp_path / "missing")], monkeypatch)
    with pytest.raises(ValueError, match="auth_token_file .*no tokens"):
        parse(["--auth-token-file", str(empty)], monkeypatch)
    tokens = tmp_path / "tokens"
    tokens.write_text("secret\n")
    with pytest.raises(ValueError, match="admin_token_file needs auth_token_file"):
        parse(["--admin-token-file", str(tokens)], monkeypatch)
    assert parse(["--auth-token-file", str(tokens)], monkeypatch).auth_token_file == tokens


def test_decoded_bytes_budget_holds_one_image_at_the_pixel_limit(monkeypatch):
    defaults = parse([], monkeypatch).limits
    assert defaults.max_decoded_bytes >= 4 * defaults.max_pixels
    assert parse(["--max-pixels", "1000", "--max-decoded-bytes", "4000"], monkeypatch).limits.max_decoded_bytes == 4000
    with pytest.raises(ValueError, match="max_decoded_bytes must be >= 4 x max_pixels"):
        parse(["--max-pixels", "1000", "--max-decoded-bytes", "3999"], monkeypatch)


def test_event_loop_setting_is_validated_and_auto_means_uvloop_where_installed(monkeypatch):
    from service.event_loop import EventLoopUnavailable, chosen_loop, run_on

    assert parse([], monkeypatch).event_loop == "auto"
    with pytest.raises(ValueError, match="event_loop must be one of auto, uvloop, asyncio"):
        parse(["--event-loop", "trio"], monkeypatch)
    assert chosen_loop("auto") == "uvloop" and chosen_loop("asyncio") == "asyncio"  # uvloop is a serving dependency

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_on("uvloop", loop_module()).startswith("uvloop")
    assert run_on("asyncio", loop_module()).startswith("asyncio")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # a platform without uvloop
    assert chosen_loop("auto") == "asyncio"
    with pytest.raises(EventLoopUnavailable, match="uvloop is not installed"):
        chosen_loop("uvloop")
