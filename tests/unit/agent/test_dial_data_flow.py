"""The data port's relay keeps flow control both ways: an end whose writes back up stops the
other end's reading until they drain (agent/dial_data.py)."""

from __future__ import annotations

from unittest import mock

from warren.agent import dial_data


def _transport() -> mock.Mock:
    return mock.Mock(spec=["pause_reading", "resume_reading"])


def test_each_end_pauses_and_resumes_the_other_ends_reading() -> None:
    sb = dial_data._SandboxSide(touch=lambda: None, release=lambda: None)
    data = dial_data._DataSide.__new__(dial_data._DataSide)
    sb.t, data.t = _transport(), _transport()
    sb.peer, data.sb = data, sb
    sb.pause_writing()
    data.t.pause_reading.assert_called_once_with()
    sb.resume_writing()
    data.t.resume_reading.assert_called_once_with()
    data.pause_writing()
    sb.t.pause_reading.assert_called_once_with()
    data.resume_writing()
    sb.t.resume_reading.assert_called_once_with()


def test_an_end_not_linked_yet_pauses_nothing() -> None:
    sb = dial_data._SandboxSide(touch=lambda: None, release=lambda: None)
    sb.pause_writing()
    sb.resume_writing()
    data = dial_data._DataSide.__new__(dial_data._DataSide)
    data.sb = sb  # linked, but the sandbox side has no transport yet
    sb.t = None
    data.pause_writing()
    data.resume_writing()
