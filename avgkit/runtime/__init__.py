"""Process policy shared by every stage: devices and precision, the process group, stop signals.

Training, sampling, evaluation, conversion and plugin trainers ask these modules, never
each other, which device to use, whether to autocast, how ranks meet and when to stop.
"""
