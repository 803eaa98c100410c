"""`make bench-peers`: our service beside TorchServe, LitServe and BentoML (issue 28, section 3).

driver.py runs the sitting; one adapter per system (ours.py, torchserve.py, litserve.py, bentoml.py) says how it
is configured and started; servers/ holds what runs inside the peers' venvs; requirements/ what those venvs hold.
"""
