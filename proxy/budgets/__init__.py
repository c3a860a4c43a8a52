"""Spending caps and the alerts that warn of them, checked before a call is forwarded.

``windows`` aligns a budget's window (daily, weekly, monthly, or total) to the calendar
of its IANA time zone. Budgets are stored in ``storage`` (``budgets``, ``budget_alerts``);
admission reserves an estimate against them before forwarding, and the recorder settles
the reservation against the real cost once the call is recorded.
"""
