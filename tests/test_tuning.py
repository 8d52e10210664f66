"""pplug.tuning.tuning_dev: the one frame every "auto" decoding weight is chosen in."""

import pytest

from pplug.config import DecodeConfig
from pplug.data.records import Question, Split
from pplug.tuning import tuning_dev


def make_dev(n: int) -> Split:
    questions = [Question(id=f"q{i}", input=f"input {i}", profile=[], user_id=f"u{i}") for i in range(n)]
    return Split(task="t", name="dev", questions=questions, golds={q.id: "x" for q in questions})


@pytest.mark.parametrize(("limit", "expected"), [(3, 3), (None, 5), (9, 5)])
def test_first_tune_limit_questions_with_own_histories(limit, expected):
    decode = DecodeConfig(tune_limit=limit, swap_history=True)
    with tuning_dev(decode, make_dev(5)) as dev:
        assert [q.id for q in dev.questions] == [f"q{i}" for i in range(expected)]
        assert decode.swap_history is False  # chosen on the users' own histories
    assert decode.swap_history is True  # the diagnostic is restored afterwards


def test_swap_is_restored_when_tuning_fails():
    decode = DecodeConfig(swap_history=True)
    with pytest.raises(RuntimeError), tuning_dev(decode, make_dev(2)):
        raise RuntimeError("a dev pass failed")
    assert decode.swap_history is True
