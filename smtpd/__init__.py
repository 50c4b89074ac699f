"""Mailadmin's SMTP submission server (shadows the deprecated stdlib `smtpd`).

Run with `python -m smtpd` or `manage.py runsmtpd`; see README "SMTP submission server".
"""
