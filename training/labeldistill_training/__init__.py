"""Offline training for labeldistill_ros (import name: ``labeldistill_training``).

The folder is ``training/`` in the repository; ``setup.py`` maps it to the distinct import name
``labeldistill_training`` so that it can never collide with another distribution's ``training`` package in
site-packages. It builds on the vehicle runtime ``labeldistill_ros``; the runtime never imports it.
"""
