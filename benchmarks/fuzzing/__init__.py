"""The parts of the live-broker fuzz benchmark, whose entry point is ``benchmarks/fuzz.py`` (its docstring
says what is run and what is printed):

- ``mutations``: how a valid message is corrupted (``Mutator``);
- ``oracle``: what the broker should do with one fuzz message (an ERROR, silence, or "unsafe": not fuzz);
- ``job``: the real broker and honest worker processes;
- ``driver``: the fuzzing sockets and the loop that sends the mutated frames;
- ``checks``: what is asserted afterwards (``state_unchanged``).

Imported as ``fuzzing`` when a benchmark runs as ``python benchmarks/NAME.py`` (``benchmarks/`` is then on
``sys.path``, as ``procs`` and ``flcli``, which these modules import, need)."""

__all__: list[str] = []
