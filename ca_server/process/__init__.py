"""The CA as processes: the supervisor (`ca serve`), its worker processes and the pool that spawns and feeds them, the listening ports, and the wiring of CA slots to their store."""
