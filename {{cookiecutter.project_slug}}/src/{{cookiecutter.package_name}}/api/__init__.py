"""HTTP routes: the health probes, and one small example per resource that you can delete."""
