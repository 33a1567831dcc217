"""What a run's config holds and what it must satisfy.

defaults.py  every field with its default (`base()`: the quickstart), the sections that variants
             replace (`image_tower`, `text_tower`, `evaluator`), and `complete`: a config read
             back from a checkpoint written by an older jclip, with the fields added since
derived.py   values computed from a config: the text tower's architecture, a step's pairs
checks.py    `validate`: every problem of a config that cannot work, named with its fix, before
             any data is read or any parameter initialised
"""
