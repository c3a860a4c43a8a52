"""Spending caps and the alerts that warn of them, checked before a call is forwarded.

``model`` validates a budget as the CLI and the admin API take it (``BudgetSpec``) and
as they show it; ``windows`` aligns its window (daily, weekly, monthly, or total) to the
calendar of its IANA time zone. On the request path, ``engine`` matches a call's
principal to the enforced budgets that cover it and reserves an ``estimate`` of its
cost against each (``rules`` says what a usage counts against a budget, ``counters``
keeps the amounts: in memory over a refreshed view of the database, or shared in
Redis); the recorder settles the reservation against the real cost. Beside the path,
``alerts`` evaluates spend from the database and delivers each threshold crossing
once, through an outbox, to the budget's webhook.
"""
