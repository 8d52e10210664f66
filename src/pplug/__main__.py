"""``python -m pplug ...`` = the ``pplug`` command (what ``torchrun -m pplug train ...`` runs)."""

from pplug.cli import main

if __name__ == "__main__":
    main()
