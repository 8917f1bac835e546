"""Pure nn.Modules (no I/O, no distributed calls)."""
