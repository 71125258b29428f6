import sys
from pathlib import Path

# bench/ (the fuzzer) is a folder of scripts at the repository root, not part of the package
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
