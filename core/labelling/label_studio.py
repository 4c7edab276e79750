"""Label Studio's formats: the labelling config for a task's label schema, tasks with pre-annotations, and the
answers in Label Studio's JSON export.

One control named ``label`` labels the first of the item's ``image``, ``audio`` or ``text`` (as
``task.describe`` gives them):

=============  ==================  ==================================================================
schema         control             canonical label (see ``LabelSchema`` in :mod:`activelab.hooks`)
=============  ==================  ==================================================================
choices        ``Choices``         an index into the choices, or the choice itself
rectangles     ``RectangleLabels`` ``[{"label": name, "box": [x0, y0, x1, y1]}]`` in pixels
text, free     ``TextArea``        the text (free: parsed by the task's ``parse_label`` or as JSON)
=============  ==================  ==================================================================

Label Studio keeps boxes in percent of the image; they are converted with the image's size (the result's
``original_width``/``original_height``, else ``describe``'s ``width``/``height``).
"""
from __future__ import annotations

import json
from typing import Any, Mapping
from xml.sax.saxutils import quoteattr

from . import label_schema

CONTROL = "label"
OBJECTS = {"image": "Image", "audio": "Audio", "text": "Text"}     # describe fields Label Studio shows
RESULT_TYPE = {"choices": "choices", "rectangles": "rectanglelabels", "text": "textarea", "free": "textarea"}


def target(fields: Mapping[str, Any]) -> str:
    """The object the control labels: the first of image, audio, text that the item has (text by default)."""
    return next((name for name in OBJECTS if name in fields), "text")


def config_xml(kind: dict[str, Any], fields: Mapping[str, Any]) -> str:
    """The labelling config for a label schema and the fields an item's description has."""
    shown = [name for name in OBJECTS if name in fields] or ["text"]
    to = quoteattr(target(fields))
    lines = ["<View>"]
    lines += [f'  <{OBJECTS[n]} name="{n}" value="${n}"/>' for n in shown]
    ktype = kind.get("type", "free")
    if ktype == "choices":
        lines.append(f'  <Choices name="{CONTROL}" toName={to} choice="single" showInline="true" required="true">')
        lines += [f"    <Choice value={quoteattr(str(c))}/>" for c in kind.get("choices", [])]
        lines.append("  </Choices>")
    elif ktype == "rectangles":
        lines.append(f'  <RectangleLabels name="{CONTROL}" toName={to}>')
        lines += [f"    <Label value={quoteattr(str(c))}/>" for c in kind.get("classes", [])]
        lines.append("  </RectangleLabels>")
    else:
        lines.append(f'  <TextArea name="{CONTROL}" toName={to} editable="true" maxSubmissions="1" '
                     f'required="true" rows="3"/>')
    lines.append("</View>")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- our labels -> LS
def to_result(value: Any, kind: dict[str, Any], to: str, size: tuple[float, float] | None) -> list[dict[str, Any]]:
    """A canonical label (or a suggestion) as Label Studio result regions; [] where it cannot be drawn."""
    ktype = kind.get("type", "free")
    base = {"from_name": CONTROL, "to_name": to, "type": RESULT_TYPE.get(ktype, "textarea")}
    if ktype == "choices":
        name = label_schema.choice_name(value, kind)
        return [{**base, "value": {"choices": [name]}}] if name is not None else []
    if ktype == "rectangles":
        if size is None or not isinstance(value, list):
            return []
        width, height = size
        out = []
        for n, box in enumerate(value):
            label = box.get("label")
            if isinstance(label, int) and not isinstance(label, bool):
                label = (kind.get("classes") or [])[label] if 0 <= label < len(kind.get("classes") or []) else label
            x0, y0, x1, y1 = (float(v) for v in box["box"])
            region = {**base, "id": f"r{n}", "original_width": width, "original_height": height, "image_rotation": 0,
                      "value": {"x": 100 * x0 / width, "y": 100 * y0 / height, "width": 100 * (x1 - x0) / width,
                                "height": 100 * (y1 - y0) / height, "rotation": 0, "rectanglelabels": [str(label)]}}
            if "score" in box:
                region["score"] = float(box["score"])
            out.append(region)
        return out
    return [{**base, "value": {"text": [label_schema.text_cell(value)]}}]


def task(data: dict[str, Any], suggestion: Any, score: float | None, kind: dict[str, Any],
         size: tuple[float, float] | None, model_version: str) -> dict[str, Any]:
    """One Label Studio task: the item's data, and the model's suggestion as a pre-annotation whose score is the
    acquisition score (annotators can sort the batch by it)."""
    out: dict[str, Any] = {"data": data}
    result = to_result(suggestion, kind, target(data), size) if suggestion is not None else []
    if result or score is not None:
        prediction: dict[str, Any] = {"model_version": model_version, "result": result}
        if score is not None:
            prediction["score"] = score
        out["predictions"] = [prediction]
    return out


# ---------------------------------------------------------------------------------------------- LS -> our labels
def from_result(regions: list[Any], kind: dict[str, Any], size: tuple[float, float] | None) -> Any:
    """An annotation's result regions as a label value for ``check_label``; ``ValueError`` when malformed."""
    ktype = kind.get("type", "free")
    mine = [r for r in regions if isinstance(r, dict) and r.get("type") == RESULT_TYPE.get(ktype, "textarea")]
    if ktype == "rectangles":
        return [_box(r, size) for r in mine]
    if not mine:
        raise ValueError("the annotation gives no " + ("choice" if ktype == "choices" else "text"))
    value = mine[0].get("value")
    if ktype == "choices":
        chosen = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(chosen, list) or len(chosen) != 1:
            raise ValueError(f"expected exactly one choice, got {chosen!r}")
        return chosen[0]
    texts = value.get("text") if isinstance(value, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"malformed text area value {value!r}")
    text = "\n".join(texts).strip()
    if not text:
        raise ValueError("empty text")
    return text


def _box(region: dict[str, Any], size: tuple[float, float] | None) -> dict[str, Any]:
    value = region.get("value")
    try:
        width = float(region.get("original_width") or size[0])     # type: ignore[index]
        height = float(region.get("original_height") or size[1])   # type: ignore[index]
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        labels = value["rectanglelabels"]
    except (TypeError, KeyError, ValueError):
        raise ValueError(f"malformed box {json.dumps(value)}") from None
    if not isinstance(labels, list) or len(labels) != 1:
        raise ValueError(f"a box needs exactly one label, got {labels!r}")
    if float(value.get("rotation") or 0):
        raise ValueError("rotated boxes are not supported")
    pixels = [x * width / 100, y * height / 100, (x + w) * width / 100, (y + h) * height / 100]
    return {"label": labels[0], "box": [round(v, 2) for v in pixels]}


def pick_annotation(entry: dict[str, Any]) -> tuple[str, Any, str]:
    """The answer a Label Studio task carries: ``("label", result, annotator)`` for its latest submitted
    annotation, ``("skip", None, annotator)`` when it was only skipped (cancelled), ``("none", None, "")``."""
    annotations = entry.get("annotations") or []
    if not isinstance(annotations, list):
        raise ValueError("'annotations' is not a list")
    valid = [a for a in annotations if isinstance(a, dict)]
    done = [a for a in valid if not a.get("was_cancelled")]
    pool = done or valid
    if not pool:
        return "none", None, ""
    last = max(enumerate(pool), key=lambda p: (str(p[1].get("updated_at") or p[1].get("created_at") or ""), p[0]))[1]
    who = last.get("completed_by")
    who = who.get("email") or who.get("id") if isinstance(who, dict) else who
    annotator = f"label-studio:{who}" if who not in (None, "") else "label-studio"
    if not done:
        return "skip", None, annotator
    result = last.get("result")
    if not isinstance(result, list):
        raise ValueError("the annotation's 'result' is not a list")
    return "label", result, annotator
