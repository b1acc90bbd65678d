"""HTTP layer: parses, validates, serialises and maps errors; holds no ranking logic."""
