"""Tables, figures and the Markdown report of a run (stage ``make_report``).

``published`` contains the numbers published by Khorrami and Räsänen
(Interspeech 2021), ``tables`` builds Tables 1 and 2,
``figures`` draws Fig. 3 and the other figures, and ``stage.run`` writes them all.
``overlays`` draws the alignment overlays, ``markdown`` assembles report.md, and
``state`` contains the stage's shared state and the readers of its inputs.
"""
