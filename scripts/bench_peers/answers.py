"""The rule before any timing: a system is reported only if its top-1 equals eager PyTorch's on every photo."""

from __future__ import annotations


class WrongAnswers(RuntimeError):
    """A system's top-1 differs from eager PyTorch's on some photo: its speed is not comparable, so not reported."""


def check_answers(system: str, reference: dict[str, str], answers: dict[str, str]) -> None:
    """Raise WrongAnswers naming every photo whose answer differs from the reference (or is missing)."""
    wrong = [f"{photo}: {answers.get(photo, 'no answer')!r} instead of {label!r}"
             for photo, label in reference.items() if answers.get(photo) != label]
    if wrong:
        raise WrongAnswers(f"{system} disagrees with eager PyTorch on {len(wrong)} of {len(reference)} photos: "
                           + "; ".join(wrong))
