"""Workflows: what users run on top of the compile pipeline (compiler.driver) and the
emulator (runtime_emu): the command line, verification, gradient fidelity, fine-tuning and
BatchNorm adaptation.  Nothing else in compiler/ imports this package."""
