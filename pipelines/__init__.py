"""Long-running jobs that run models over image collections: homographic adaptation
(pseudo-labels), feature extraction into files, and tracking through a video. ``export.py`` and
``extract.py`` are their commands.
"""
