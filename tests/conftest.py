import sys
from pathlib import Path

# Test helpers (reference implementations, crash writers) are imported by name from their folders.
for folder in Path(__file__).parent.iterdir():
    if folder.is_dir() and not folder.name.startswith(("_", ".")):
        sys.path.insert(0, str(folder))
