"""The new-campaign form: its fields, the spec dict they make, and where errors go.

The form's inputs are named after the spec's fields (``temperature``, ``md_steps``, ...),
so an error the coordinator reports for ``config.temperature`` lands beside the input
named ``temperature`` (:func:`form_field`). A YAML spec (pasted or uploaded) is the
starting point; every input that is filled in overrides its field. Uploaded files go to
the coordinator with the spec (``Client.start(files=...)``) under their own (bare) file
names, which the spec then names: ``structure: cu.xyz``, ``reference: qe:pw.in``.
Checks here are only the ones the coordinator cannot make (a number that does not
parse, a file that does not fit); everything else is the coordinator's validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# form input -> (kind, label). Kinds: int, float, pressure (a number or "1 GPa"), choice.
NUMBERS = {
    "temperature": (float, "temperature (K)"),
    "pressure": ("pressure", "pressure (GPa)"),
    "chains": (int, "chains"),
    "steps": (int, "MC steps per chain"),
    "md_steps": (int, "MD steps per move (n_md)"),
    "burn_in": (int, "burn-in steps"),
    "retrain_every": (int, "re-train every (labels)"),
}
ENSEMBLES = ("nvt", "npt")
# The references offered in the form's select (the text field takes any spec string).
COMMON_REFERENCES = (
    ("emt", "emt: ASE's EMT (Cu, Ag, Au, Ni, Pd, Pt, Al; tests and demos)"),
    ("qe", "qe: Quantum ESPRESSO pw.x (upload its input)"),
    ("chgnet", "chgnet: the CHGNet universal potential"),
    ("tblite", "tblite:GFN1-xTB (tight binding)"),
    ("lammps:", "lammps:... (a LAMMPS pair style)"),
    ("ase:", "ase:module:factory (an ASE calculator; coordinator needs --allow-code)"),
)
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_YAML_BYTES = 1 << 20

# the coordinator's spec field (after "config.") -> the form input that sets it
_FIELD_TO_INPUT = {
    "name": "name", "campaign": "name", "reference": "reference", "structure": "structure",
    "temperature": "temperature", "ensemble": "ensemble", "pressure": "pressure",
    "pressure_gpa": "pressure", "chains": "chains", "steps": "steps",
    "md_steps": "md_steps", "sampling.burn_in": "burn_in", "burn_in": "burn_in",
    "retrain_every": "retrain_every", "store": "store",
}


class FormError(ValueError):
    """A form input that cannot make a spec; ``field`` is the input's name."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(message)


@dataclass
class Upload:
    """One uploaded file of the form."""

    filename: str
    data: bytes


@dataclass
class Submission:
    spec: dict
    files: dict[str, bytes] = field(default_factory=dict)
    # which inputs set which spec fields, for routing the coordinator's errors back
    qe_upload: bool = False
    from_yaml: bool = False


def form_field(rpc_field: str, submission: Submission | None = None) -> str | None:
    """The form input that a coordinator error field names, or None (general error box).

    ``config.temperature`` -> ``temperature``, ``config.sampling.burn_in`` -> ``burn_in``,
    ``store.url`` -> ``store``, ``config_json`` -> ``spec_yaml``.
    """
    f = (rpc_field or "").strip()
    if f == "config_json":
        return "spec_yaml"
    if f in ("store.url", "store"):
        return "store"
    if f == "campaign":
        return "name"
    if not f.startswith("config."):
        return None
    key = f[len("config."):]
    if key.startswith("qe.") or key == "qe":
        return "qe_input" if submission is not None and submission.qe_upload else None
    target = _FIELD_TO_INPUT.get(key)
    if target == "reference" and submission is not None and submission.qe_upload:
        return "qe_input"
    return target


def safe_filename(name: str, input_name: str) -> str:
    """The bare file name of an upload (a browser may send a path), checked."""
    base = re.split(r"[\\/]", name or "")[-1].strip()
    if not base:
        raise FormError(input_name, f"{input_name}: the upload has no file name")
    if not FILE_NAME.match(base):
        raise FormError(input_name, f"{input_name}: file name {base!r} must be letters, digits, "
                        "'.', '_' or '-' (at most 128 characters); rename the file")
    return base


def _number(input_name: str, text: str):
    kind, label = NUMBERS[input_name]
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        if kind == "pressure":
            return t  # "1 GPa": the coordinator reads units (and refuses the wrong ones)
        raise FormError(input_name, f"{input_name}: {label} must be a number, got {t!r}") \
            from None
    if kind is int:
        if value != value or value in (float("inf"), float("-inf")) or value != int(value):
            raise FormError(input_name, f"{input_name}: {label} must be a whole number, "
                            f"got {t!r}")
        return int(value)
    return value


def _yaml_spec(text: str, input_name: str) -> dict:
    import yaml

    if len(text.encode()) > MAX_YAML_BYTES:
        raise FormError(input_name, f"{input_name}: the YAML spec is larger than 1 MiB")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FormError(input_name, f"{input_name}: not valid YAML{at}: {problem}") from None
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise FormError(input_name, f"{input_name}: the YAML spec must be a mapping of fields "
                        f"(name: ..., reference: ...), got a {type(spec).__name__}")
    return spec


def build_submission(fields: dict[str, str], uploads: dict[str, Upload]) -> Submission:
    """The spec dict and uploaded files of one form submission.

    fields: text inputs by name (empty strings are "not set"). uploads: file inputs by
    name (``structure``, ``qe_input``, ``spec_file``), only those with a file chosen.
    """
    text = {k: (v or "").strip() if isinstance(v, str) else "" for k, v in fields.items()}
    spec: dict = {}
    sub = Submission(spec={})
    yaml_text = text.get("spec_yaml", "")
    if "spec_file" in uploads:
        if yaml_text:
            raise FormError("spec_file", "spec_file: give the YAML spec as a file or in the "
                            "text box, not both")
        try:
            yaml_text = uploads["spec_file"].data.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError("spec_file", "spec_file: not a UTF-8 text file") from None
        spec = _yaml_spec(yaml_text, "spec_file")
    elif yaml_text:
        spec = _yaml_spec(yaml_text, "spec_yaml")
    sub.from_yaml = bool(spec)

    if text.get("name"):
        spec["name"] = text["name"]
    if text.get("store"):
        spec["store"] = text["store"]
    for key in ("temperature", "pressure", "chains", "steps", "md_steps", "retrain_every"):
        if text.get(key):
            spec[key] = _number(key, text[key])
    if text.get("burn_in"):
        sampling = spec.get("sampling")
        if sampling is None:
            sampling = spec["sampling"] = {}
        if not isinstance(sampling, dict):
            raise FormError("spec_yaml", "spec_yaml: sampling must be a mapping "
                            "(sampling: {burn_in: 100}) to set the burn-in")
        sampling["burn_in"] = _number("burn_in", text["burn_in"])
    ensemble = text.get("ensemble", "")
    if ensemble:
        if ensemble not in ENSEMBLES:
            raise FormError("ensemble", f"ensemble: must be nvt or npt, got {ensemble!r}")
        spec["ensemble"] = ensemble

    files: dict[str, bytes] = {}
    reference = text.get("reference", "")
    if "qe_input" in uploads:
        name = safe_filename(uploads["qe_input"].filename, "qe_input")
        if reference not in ("", "qe", "qe:"):
            raise FormError("qe_input", f"qe_input: a pw.x input was uploaded but the reference "
                            f"is {reference!r}; choose the reference qe, or remove the file")
        files[name] = uploads["qe_input"].data
        spec["reference"] = f"qe:{name}"
        sub.qe_upload = True
    elif reference in ("qe", "qe:"):
        current = spec.get("reference")
        if not (isinstance(current, str) and current.lower().startswith("qe:")
                and len(current) > 3):
            raise FormError("qe_input", "qe_input: the reference qe needs a pw.x input file; "
                            "upload it here")
    elif reference:
        spec["reference"] = reference
    if "structure" in uploads:
        name = safe_filename(uploads["structure"].filename, "structure")
        if name in files:
            raise FormError("structure", f"structure: {name!r} has the same file name as the "
                            "QE input; rename one of them")
        files[name] = uploads["structure"].data
        spec["structure"] = name
    for name, data in files.items():
        if not data:
            which = "qe_input" if spec.get("reference") == f"qe:{name}" else "structure"
            raise FormError(which, f"{which}: the file {name!r} is empty")
    sub.spec, sub.files = spec, files
    return sub
