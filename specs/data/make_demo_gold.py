"""Make specs/data/demo-tickets.csv: 400 made-up support tickets, half of
them with a hand label in `gold_label` (the demo of `output.gold`).

Deterministic (fixed seed): run `python3 specs/data/make_demo_gold.py` from
the repository root to make the same file again.
"""

import csv
import random

LABELS = ["billing", "bug", "feature", "account"]

# Phrases per true class. Most name their class in words (the simulated
# provider answers like a keyword classifier, so those are "easy"); some
# name none or another class's word, so the demo shows real disagreements.
PHRASES = {
    "billing": [
        "I was charged twice this month, please look at my billing.",
        "The invoice for March shows the wrong VAT number.",
        "Why did my billing amount go up without notice?",
        "Can I get a refund for the unused months? Billing said to write here.",
        "My card was declined but the billing page says paid.",
        "Please send a copy of the last three receipts.",
    ],
    "bug": [
        "The export button crashes the app, looks like a bug.",
        "Since the update the dashboard shows a blank page (bug?).",
        "Found a bug: dates are shown in the wrong time zone.",
        "The search returns nothing for words with accents.",
        "Every time I upload a PNG the bug report dialog pops up.",
        "Charts do not render in Safari, probably a bug on your side.",
    ],
    "feature": [
        "Feature request: dark mode for the editor, please.",
        "It would be great to have a feature to export to Excel.",
        "Could you add keyboard shortcuts? A small feature but useful.",
        "Please add two-factor login with hardware keys.",
        "A feature to schedule reports weekly would save us hours.",
        "We would love an API for bulk imports (feature idea).",
    ],
    "account": [
        "I cannot log in to my account after the password reset.",
        "Please merge my two account profiles into one.",
        "How do I change the email address of my account?",
        "Delete my account and all data, as GDPR allows.",
        "My account was locked after three attempts; unlock it please.",
        "I want to move the account ownership to my colleague, billing stays with me.",
    ],
}

NAMES = ["Ana", "Bo", "Chen", "Dara", "Eli", "Fatou", "Goran", "Hana", "Ivo", "Jun"]


def main():
    rng = random.Random(20261208)
    rows = []
    for i in range(1, 401):
        label = rng.choices(LABELS, weights=[35, 30, 20, 15])[0]
        body = rng.choice(PHRASES[label])
        subject = body.split(",")[0].split(".")[0][:40]
        name = rng.choice(NAMES)
        gold = ""
        if i <= 240 and rng.random() < 0.8:
            gold = label
            # A few hand labels disagree with the ticket's "true" class, as
            # real annotators do.
            if rng.random() < 0.06:
                gold = rng.choice([x for x in LABELS if x != label])
        rows.append([f"t{i:04d}", f"{subject} ({name})", body, gold])
    # Two typos in the gold file: named as unknown gold values, not
    # counted as disagreements.
    rows[6][3] = "Billng"
    rows[21][3] = "bugg"
    with open("specs/data/demo-tickets.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ticket_id", "subject", "body", "gold_label"])
        w.writerows(rows)


if __name__ == "__main__":
    main()
