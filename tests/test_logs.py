"""tkx's one log set-up: library chatter is dropped unless --log_level debug."""

import logging

import pytest

from tkx import logs


@pytest.mark.parametrize(
    "message, shown_at_info",
    [
        ("Metadata file does not exist: /ckpt/_CHECKPOINT_METADATA", False),
        (
            "[process=1][thread=MainThread] Reached preemption sync point, step=3",
            False,
        ),
        ("Saving checkpoint /ckpt/checkpoint_3", True),
    ],
)
def test_library_chatter_only_at_debug(message, shown_at_info, capsys):
  for level, shown in (("info", shown_at_info), ("debug", True)):
    logs.setup_logging(level)
    logging.getLogger("absl").warning(message)
    assert (message in capsys.readouterr().err) == shown, level
  logs.setup_logging("info")
