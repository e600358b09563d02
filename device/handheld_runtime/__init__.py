"""The handheld runtime: ``spd-device run`` for a nurse's scanning station (``kind = "handheld"``).

``station`` (log-in, patient context, charge and return, every refusal told
and recorded), ``agent`` (scanners, buzzer, LED and the loop thread),
``screen`` (console UI or headless lines), ``remote`` (signed commands),
``run`` (assembles them with the event log and sync). See docs/handheld.md.
"""
