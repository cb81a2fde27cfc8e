"""The error a bad setting raises anywhere in the library, worded for the library's user and, through
``worded``, for a front end's (train_cli names the settings as its flags)."""
from __future__ import annotations

import re
from typing import Callable


class SettingError(ValueError):
    """A setting's value is invalid. The message names each setting as the parameter it is (``cutout_p``,
    ``max_lr``); ``settings`` maps each such word of the message to the run setting it stands for, so a front
    end can name it its own way. ``SettingError(msg, "cutout_p")`` is short for ``cutout_p="cutout_p"``."""

    def __init__(self, message: str, *same: str, **renamed: str):
        super().__init__(message)
        self.settings: dict[str, str] = {**{s: s for s in same}, **renamed}

    def worded(self, name: Callable[[str], str]) -> str:
        """The message with each setting's word replaced by ``name(setting)`` (whole words only)."""
        msg = str(self)
        for word, setting in self.settings.items():
            msg = re.sub(rf"(?<![\w-]){re.escape(word)}(?![\w-])", name(setting), msg)
        return msg
