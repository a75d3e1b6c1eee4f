"""textclf.settings: the settings block as typed --flags, one-line errors, and --help from the script's own text."""

import importlib

import pytest

from textclf.settings import parse_settings


def test_settings_overrides_are_typed_from_the_defaults():
    defaults = {"EPOCHS": 3, "LEARNING_RATE": 5e-5, "COMPILE": False, "MODEL_NAME": "x", "RESUME": False}
    settings, given = parse_settings(
        ["--epochs=1", "--learning-rate", "1", "--compile", "yes", "--model-name", "/m", "--resume"], defaults
    )
    assert settings == {"EPOCHS": 1, "LEARNING_RATE": 1.0, "COMPILE": True, "MODEL_NAME": "/m", "RESUME": True}
    assert isinstance(settings["LEARNING_RATE"], float) and set(given) == set(defaults)
    assert parse_settings(["--compile", "off"], defaults)[0]["COMPILE"] is False
    assert parse_settings([], defaults) == (defaults, {})


def test_split_sizes_are_counts_or_fractions():
    defaults = {"TRAIN_SIZE": 35_000, "VALID_SIZE": 5_000}
    settings, _ = parse_settings(["--train-size", "0.8", "--valid-size", "100"], defaults)
    assert settings == {"TRAIN_SIZE": 0.8, "VALID_SIZE": 100} and isinstance(settings["VALID_SIZE"], int)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epoch", "1"], "unknown setting '--epoch'; the settings are: --epochs --learning-rate --compile"),
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
        (["--learning-rate", "fast"], "argument --learning-rate: invalid float value: 'fast'"),
        (["--compile", "maybe"], "argument --compile: invalid bool value: 'maybe'"),
        (["--max-length", "64"], "unknown setting '--max-length'"),
    ],
)
def test_bad_overrides_name_the_setting(argv, message):
    defaults = {"EPOCHS": 3, "LEARNING_RATE": 5e-5, "COMPILE": False}
    with pytest.raises(SystemExit) as exit:
        parse_settings(argv, defaults)
    text = exit.value.code  # printed as one line on stderr, exit status 1
    assert text.startswith("error: ") and "\n" not in text and message in text


@pytest.mark.parametrize("name", ["train_distilbert", "train_lstm_baseline"])
def test_help_shows_the_scripts_docstring_and_every_setting_with_its_comment(name, capsys):
    script = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit:
        script.main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and script.__doc__.splitlines()[0] in out
    out = "".join(out.split())  # argparse wraps long lines
    for setting, value in script.DEFAULTS.items():
        assert f"--{setting.lower().replace('_', '-')}" in out and f"default:{value}" in out
    assert "passesoverthetrainingsplit(default:" in out  # the settings block's comments explain each one
