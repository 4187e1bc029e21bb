"""`python -m golf_cli` (what `golf run --nproc N` launches through torchrun)."""

from .main import main

main()
