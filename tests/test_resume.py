"""--work-dir: a conversion that stops (here ^C at a chosen call) goes on from its work directory when run again,
does none of its finished steps twice, and writes the file, byte for byte, of a conversion that never stopped.
On the qwen2 fixture (QKV biases, which the scale tuning's factors reach), with self-generated calibration text,
the vocabulary coded, GPTQ and two passes of scale tuning."""
from __future__ import annotations

import pytest

from models import EVAL_TEXT
from pvq_convert import ConvertError, convert as convert_module, quantize, tune
from pvq_convert.convert import convert
from pvq_convert.pvq_presets import preset
from pvq_convert.quantize import Method, QuantOptions


@pytest.fixture(scope="module")
def qwen2_dir(smollm2, tmp_path_factory):
    from models.qwen2_fixture import build
    return build(tmp_path_factory.mktemp("qwen2"), smollm2.hf_dir)


def options(work=None, epochs=2) -> QuantOptions:
    return QuantOptions(Method("pvq", preset(3.25), tune_epochs=epochs, vocab_layout=preset(2.25)), EVAL_TEXT,
                        n_seq=2, seq_len=32, n_generated=1, work_dir=work)


@pytest.fixture(scope="module")
def whole_file(qwen2_dir, tmp_path_factory):
    return convert(qwen2_dir, tmp_path_factory.mktemp("whole") / "m.gguf", quant=options(), progress=False)


def counted(monkeypatch, module, name: str, stop_at: int | None = None) -> list[int]:
    """Counts the calls of module.name; with stop_at, that call raises KeyboardInterrupt instead."""
    real, calls = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# (module, function, the call that is stopped): in the second block's GPTQ, in the first tuning pass, while writing
STOPS = {"quantizing": (quantize, "quantize_group", 8), "tuning": (tune, "streamed_backward", 2),
         "writing": (convert_module, "write_streaming", 1)}


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stopped_conversion_goes_on_to_the_same_file(qwen2_dir, whole_file, tmp_path, stop):
    module, name, at = STOPS[stop]
    work, out = tmp_path / "work", tmp_path / "m.gguf"
    with pytest.MonkeyPatch.context() as mp:
        counted(mp, module, name, stop_at=at)
        with pytest.raises(KeyboardInterrupt):
            convert(qwen2_dir, out, quant=options(work), progress=False)
    assert not out.exists() and (work / "calibration.pt").is_file()
    with pytest.MonkeyPatch.context() as mp:
        groups, steps = counted(mp, quantize, "quantize_group"), counted(mp, tune, "streamed_backward")
        convert(qwen2_dir, out, quant=options(work), progress=False)
    assert out.read_bytes() == whole_file.read_bytes()
    assert not work.exists()
    # what was finished is not done again: of the 2 vocabulary matrices, 2 blocks x 4 input groups and 2 x 2
    # tuning steps, a stop in block 1 leaves its 4 groups and the tuning
    assert groups[0] == {"quantizing": 4, "tuning": 0, "writing": 0}[stop]
    assert steps[0] == {"quantizing": 4, "tuning": 4 - (at - 1), "writing": 0}[stop]


def test_a_work_dir_of_another_conversion_is_refused(qwen2_dir, tmp_path):
    work = tmp_path / "work"
    with pytest.MonkeyPatch.context() as mp:
        counted(mp, tune, "streamed_backward", stop_at=1)
        with pytest.raises(KeyboardInterrupt):
            convert(qwen2_dir, tmp_path / "m.gguf", quant=options(work), progress=False)
    with pytest.raises(ConvertError, match="holds the work of another conversion .*options"):
        convert(qwen2_dir, tmp_path / "m.gguf", quant=options(work, epochs=1), progress=False)
    assert (work / "calibration.pt").is_file()      # nothing of it is lost
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("a user's file")
    with pytest.raises(ConvertError, match="not empty and holds no conversion's work"):
        convert(qwen2_dir, tmp_path / "m.gguf", quant=options(other), progress=False)
    assert (other / "notes.txt").read_text() == "a user's file"
