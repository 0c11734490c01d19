"""avmae.data.io.media_errors: the one place that turns what PyAV raises into a MediaError."""

import av
import pytest

from avmae.data import MediaError
from avmae.data.io import media_errors


def test_other_errors_become_one_media_error_naming_the_file():
    with pytest.raises(MediaError) as info, media_errors("a.mp4", 5.0, "corrupt or truncated video"):
        raise ValueError("bad packet")
    assert info.value.path == "a.mp4" and info.value.reason == "corrupt or truncated video (ValueError: bad packet)"
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(MediaError) as info, media_errors("b.wav", None, "not a readable media file", with_type=False):
        raise OSError("no format")
    assert info.value.reason == "not a readable media file (no format)"


def test_a_media_error_passes_unchanged_and_the_interrupt_is_the_time_limit():
    inner = MediaError("c.wav", "no audio stream")
    with pytest.raises(MediaError) as info, media_errors("c.wav", 5.0, "corrupt"):
        raise inner
    assert info.value is inner
    exit_error = av.error.ExitError(-1414092869, "Immediate exit requested")  # FFmpeg's AVERROR_EXIT
    with pytest.raises(MediaError, match=r"longer than 2 s \(time limit per item\)"), media_errors("d", 2.0, "x"):
        raise exit_error
    with pytest.raises(MediaError, match=r"^d: x \(ExitError"), media_errors("d", None, "x"):  # no limit was set
        raise exit_error


def test_unreadable_files_name_the_file_through_the_helper(tmp_path):
    from avmae.data import load_audio
    from avmae.data.video import decode_frames, probe_video

    bad = tmp_path / "noise.mp4"
    bad.write_bytes(b"\x00not a container" * 64)
    for read in (load_audio, probe_video, lambda p: decode_frames(p, 2)):
        with pytest.raises(MediaError) as info:
            read(bad)
        assert info.value.path == str(bad) and info.value.reason.startswith("not a readable media file (")
