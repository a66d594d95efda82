"""Shows the published schema feeds a code generator: generates pydantic models from it with
datamodel-code-generator, type-checks a consumer against them with mypy --strict (and a consumer
that misreads a field, which must fail), then parses each body given on stdin (one JSON body a
line) with the generated models. Exits 0 and prints what the consumer read when all holds.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parent.parent / "schemas" / "webhook-event.schema.json"
BIN = Path(sys.executable).parent
MISREAD = """from webhook_event import ExportCompleted, WebhookEvent


def misread(body: bytes) -> str:
    event = WebhookEvent.model_validate_json(body).root
    assert isinstance(event, ExportCompleted)
    return event.data.error.code
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={"MYPYPATH": str(cwd)})


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generated = run(
            str(BIN / "datamodel-codegen"), "--input", str(SCHEMA), "--input-file-type", "jsonschema",
            "--output-model-type", "pydantic_v2.BaseModel", "--field-constraints", "--use-annotated",
            "--disable-timestamp", "--formatters", "builtin", "--output", str(out / "webhook_event.py"),
            cwd=out,
        )
        if generated.returncode != 0:
            print(f"generation failed: {generated.stderr}")
            return 1
        (out / "typed_consumer.py").write_text((HERE / "typed_consumer.py").read_text())
        (out / "misread.py").write_text(MISREAD)
        typed = run(str(BIN / "mypy"), "--strict", "--no-incremental", "typed_consumer.py", cwd=out)
        if typed.returncode != 0:
            print(f"the consumer does not type-check: {typed.stdout}")
            return 1
        misread = run(str(BIN / "mypy"), "--strict", "--no-incremental", "misread.py", cwd=out)
        if misread.returncode == 0:
            print("a consumer reading error on export.completed type-checked: the types do not discriminate")
            return 1
        sys.path.insert(0, str(out))
        from typed_consumer import handle

        for line in sys.stdin.read().splitlines():
            print(" ".join(handle(line.encode())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
