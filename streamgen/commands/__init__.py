"""Sub-commands of the ``streamgen`` CLI; each module registers one (see :mod:`streamgen.cli`)."""
