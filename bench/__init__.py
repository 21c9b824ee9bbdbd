"""Speed and memory measurements on synthetic logs (never asserted in tests)."""
