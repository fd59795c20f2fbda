"""Attack tests (issues 13, 14, 18): each reproduces an attack or a numbered defect against real processes and
asserts that it now fails."""
