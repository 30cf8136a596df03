"""bench.experiments.config_ab's changed copy: dotted fields set, the rest kept, the server's validation applied."""

from __future__ import annotations

import pytest

from bench.experiments.config_ab import changed_copy, parse_changes
from service.config import load_model_config
from service.errors import ConfigError
from testkit import write_tiny_model


def test_a_changed_copy_sets_the_fields_and_keeps_the_rest(tmp_path):
    source = write_tiny_model(tmp_path / "repo", versions=(1, 2))
    target = tmp_path / "changed" / "tiny"
    changed_copy(source, target, parse_changes(["batching.inline_run_max_us=250", "runtime.intra_op_threads=1"]))
    original, changed = load_model_config(source / "config.yaml"), load_model_config(target / "config.yaml")
    assert original.batching.inline_run_max_us != 250 and original.runtime.intra_op_threads != 1
    assert changed.batching.inline_run_max_us == 250 and changed.runtime.intra_op_threads == 1
    assert changed.batching.max_batch_size == original.batching.max_batch_size
    assert changed.inputs == original.inputs and (target / "2" / "model.onnx").is_file()


def test_a_bad_value_is_refused_with_the_field_named(tmp_path):
    source = write_tiny_model(tmp_path / "repo")
    with pytest.raises(ConfigError, match="batching.inline_run_max_us"):
        changed_copy(source, tmp_path / "changed" / "tiny", parse_changes(["batching.inline_run_max_us=-1"]))
    with pytest.raises(SystemExit):
        parse_changes(["no-equals-sign"])


def test_nothing_to_compare_and_a_baseline_that_is_no_checkout_are_refused_before_measuring(tmp_path, capsys):
    from bench.experiments.config_ab import main

    with pytest.raises(SystemExit):
        main(["--model", "lenet5"])
    assert "nothing to compare" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--baseline-tree", str(tmp_path)])
    assert "not a convserve checkout" in capsys.readouterr().err
