"""Wire models (Pydantic v2) and their conversion to and from `quant_core` types, in one place.

`models.py` holds the model/spec input shared by plan, sweep and inspect and
the catalog answers; `plans.py` the plan and sweep bodies and answers;
`quantize.py` the upload parameters and reports.  Handlers call the
``to_core``/``from_core`` functions here and nothing else converts.
"""
