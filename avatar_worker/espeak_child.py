"""One espeak-ng synthesis with its events, through ``libespeak-ng.so.1`` and :mod:`ctypes`; run as a
child process by :func:`avatar_worker.tts.synthesize_timed`.

Why a process per synthesis: the library keeps state from one synthesis to the next (pitch
flutter, pause lengths), so the same text gave different audio on the second call in the same
process. A fresh process gives the same audio for the same text, as the ``espeak-ng`` command did,
and a crash in the library cannot take the worker down. This file imports only the standard
library (it runs with ``python -I -S``).

Protocol. The request is one JSON line on stdin: ``{"text", "voice", "rate"}``. The answer on
stdout is one JSON line, ``{"sample_rate", "samples", "events"}`` or ``{"error"}``, then
``samples`` int16 samples (mono, in the machine's byte order: the parent runs on the same machine). ``events`` are ``[type, text_position, length,
audio_position_ms, phoneme]`` for the WORD, PHONEME and MSG_TERMINATED events, in order.

The facts used from ``speak_lib.h`` (espeak-ng 1.51, Debian's ``libespeak-ng-dev``):
``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS = 2, buflength, path, options)`` with options
``espeakINITIALIZE_PHONEME_EVENTS`` (0x1), ``espeakINITIALIZE_PHONEME_IPA`` (0x2) and
``espeakINITIALIZE_DONT_EXIT`` (0x8000) returns the sample rate; the synth callback
``int (short *wav, int numsamples, espeak_EVENT *events)`` gets the events in an array ended by
type 0; ``espeak_EVENT`` is ``{int type; unsigned unique_identifier; int text_position; int
length; int audio_position; int sample; void *user_data; union {int number; const char *name;
char string[8];} id}`` with ``audio_position`` in ms and ``id.string`` the phoneme's name;
event types WORD = 1, MSG_TERMINATED = 6, PHONEME = 7; ``espeak_Synth(text, size, position,
POS_CHARACTER = 1, end_position, espeakCHARS_UTF8 = 1, ...)``; ``espeakRATE`` = 1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import sys

LIBRARY = "libespeak-ng.so.1"

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_KEPT = (_EVENT_WORD, _EVENT_MSG_TERMINATED, _EVENT_PHONEME)
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def synthesize(text: str, voice: str, rate: int) -> tuple[int, bytes, list[list]]:
    """The sample rate, the samples and the events of speaking ``text``; raises ``RuntimeError``."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("espeak-ng") or LIBRARY)
    except OSError as exc:
        raise RuntimeError(f"cannot load {LIBRARY} (Debian package libespeak-ng1, installed with "
                           f"espeak-ng): {exc}") from None
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                        _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT)
    if sample_rate <= 0:
        raise RuntimeError("espeak_Initialize failed (is espeak-ng-data installed?)")
    samples: list[bytes] = []
    events: list[list] = []

    def collect(wav: ctypes.Array, count: int, chunk_events: ctypes.Array) -> int:
        if wav and count > 0:
            samples.append(ctypes.string_at(wav, count * 2))
        i = 0
        while chunk_events[i].type != _EVENT_LIST_TERMINATED:
            e = chunk_events[i]
            if e.type in _KEPT:
                name = bytes(e.id.string).split(b"\0", 1)[0].decode("utf-8", "replace") if e.type == _EVENT_PHONEME else ""
                events.append([e.type, e.text_position, e.length, e.audio_position, name])
            i += 1
        return 0  # go on

    callback = _CALLBACK(collect)  # referenced until the synthesis is over
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
        raise RuntimeError(f"espeak-ng has no voice {voice!r}")
    lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
    data = text.encode("utf-8") + b"\0"
    status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    if status != _EE_OK:
        raise RuntimeError(f"espeak_Synth failed ({status})")
    return sample_rate, b"".join(samples), events


def main() -> int:
    request = json.loads(sys.stdin.buffer.readline())
    out = sys.stdout.buffer
    try:
        rate, raw, events = synthesize(str(request["text"]), str(request["voice"]), int(request["rate"]))
    except RuntimeError as exc:
        out.write(json.dumps({"error": str(exc)}).encode() + b"\n")
        return 1
    out.write(json.dumps({"sample_rate": rate, "samples": len(raw) // 2, "events": events}).encode() + b"\n")
    out.write(raw)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
