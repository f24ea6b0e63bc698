"""The one exception type every edgec layer raises for bad input.

It lives in isa/ (standard library only) so that the compiler, the emulator and the
command line share it without the emulator depending on the compiler.  The message is
complete and user-facing: what is wrong, where (file:line:col, layer, instruction index),
and how to fix it when that is known.  The CLI prints it and exits non-zero.
"""


class EdgecError(Exception):
    """A clear, located, user-facing error."""


class TrapError(EdgecError):
    """The emulator stopped on an instruction (bad address, overflow, malformed word)."""

    def __init__(self, index: int, mnemonic: str, what: str):
        self.index = index
        self.mnemonic = mnemonic
        super().__init__(f"trap at instruction {index} ({mnemonic}): {what}")
