"""Generate the demo task: support-ticket triage answered with one fixed JSON shape.

    python -m tunesmith.demo.tickets data/demo        # what `tunesmith demo` runs first

Each ticket is a user message; the answer is `{"category": ..., "priority": ...}`. Wording is
varied from templates with a fixed seed, so the same files come out every time:

- train.jsonl (OpenAI chat format): 560 tickets about "Planly", a project-management app,
  plus planted problems for the data stage: 24 exact duplicates, 16 near duplicates
  (punctuation changed or one word prepended) and 6 broken rows (bad JSON, missing or
  empty answers, an unknown role).
- test.jsonl: 120 new Planly tickets in the same style (no ticket text shared with train).
- ood.jsonl: 60 tickets about another product (a smart thermostat) in another tone (formal
  letters and terse chat messages): out-of-domain.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tunesmith.licenses import card_text

CATEGORIES = ["billing", "technical", "account", "feature_request", "security"]
PRIORITIES = ["low", "medium", "high"]

PLANLY_ISSUES = {
    "billing": [
        "I was charged twice for my {plan} subscription this month.",
        "My invoice for {month} shows the wrong amount.",
        "I'd like a refund for the {plan} plan, we never used it.",
        "My card was declined when the {plan} plan tried to renew.",
        "Can you explain the extra {amount} on my last invoice?",
        "We were billed for {seats} seats but only have {seats_used} users.",
        "How do I switch our {plan} plan from monthly to annual billing?",
    ],
    "technical": [
        "The {feature} page crashes every time I {action}.",
        "I get error {code} when syncing my {feature}.",
        "Planly is extremely slow when loading the {feature}.",
        "Exporting the {feature} to {fmt} gives me an empty file.",
        "Notifications stopped working on my {device}.",
        "The {feature} shows a blank screen after the latest update.",
        "Attachments fail to upload in the {feature} with error {code}.",
    ],
    "account": [
        "I can't log in since I changed my email address.",
        "How do I add {name} as a new user to our workspace?",
        "Please close my account and remove my profile.",
        "The password reset link never arrives in my inbox.",
        "I need to transfer workspace ownership to {name}.",
        "How do I change the display name on my profile?",
        "My account got locked after too many login attempts.",
    ],
    "feature_request": [
        "It would be great if the {feature} could export to {fmt}.",
        "Could you add a dark mode to the {device} app?",
        "Please add an integration with {tool}.",
        "Any plans to let us set recurring tasks in the {feature}?",
        "We'd love keyboard shortcuts for the {feature}.",
        "Please support {language} in the interface.",
        "Could the {feature} show a progress chart per person?",
    ],
    "security": [
        "I got a login alert from {country} that was not me.",
        "I think someone accessed our workspace without permission.",
        "A former employee, {name}, still seems to have access to our projects.",
        "We received a phishing email pretending to be from Planly.",
        "Someone changed our admin settings and nobody on the team did it.",
        "I see API tokens in our workspace that none of us created.",
        "Files in the {feature} were deleted by an account we don't recognise.",
    ],
}
PLANLY_URGENCY = {
    "low": ["No rush at all.", "Whenever you have a moment.", "Not urgent, just curious.",
            "It can wait until next week.", "Low priority for us."],
    "medium": ["Could you look into it this week?", "It's getting annoying, please check soon.",
               "It slows us down a bit.", "Would appreciate a reply in the next few days."],
    "high": ["This is urgent, our whole team is blocked!", "Please help ASAP!",
             "We need this fixed right now, it's critical.", "Urgent: we are losing money every hour.",
             "Top priority please, a client deadline is today."],
}
GREETINGS = ["Hi,", "Hello team,", "Hey there,", "Hi support,", "Good morning,", ""]
SIGNOFFS = ["Thanks, {name}", "- {name}", "Cheers", "Best regards, {name}", "", "Thank you!"]
SLOTS = {
    "plan": ["Pro", "Team", "Business", "Starter"],
    "month": ["January", "March", "June", "September", "November"],
    "amount": ["$12", "$49", "$120", "$7.50"],
    "seats": ["10", "25", "40"],
    "seats_used": ["4", "12", "18"],
    "feature": ["board view", "timeline", "calendar", "task list", "reports dashboard", "inbox"],
    "action": ["drag a card", "open a task", "filter by assignee", "switch projects"],
    "code": ["E401", "E503", "SYNC-22", "0x80070005", "ERR_TIMEOUT"],
    "fmt": ["CSV", "PDF", "Excel", "JSON"],
    "device": ["iPhone", "Android phone", "iPad", "Windows laptop", "Mac"],
    "name": ["Maria", "Ahmed", "Chen", "Olivia", "Tom", "Priya", "Lukas"],
    "tool": ["Slack", "Google Drive", "GitHub", "Outlook", "Zapier"],
    "language": ["Portuguese", "Japanese", "Polish", "Arabic"],
    "country": ["Brazil", "Vietnam", "Romania", "Canada"],
}

# Out-of-domain: a smart thermostat, written as formal letters or terse chat messages.
HOMEHEAT_ISSUES = {
    "billing": ["the monthly charge for the HomeHeat Care plan was taken twice from my account",
                "I have been invoiced for a thermostat that I returned",
                "the price on my statement for the HomeHeat Care plan is higher than agreed"],
    "technical": ["the thermostat display freezes and the heating will not switch on",
                  "the HomeHeat app cannot connect to the thermostat over wifi",
                  "the temperature reading is five degrees off"],
    "account": ["I cannot sign in to the HomeHeat app after moving house",
                "I would like my partner to have a second login for our home",
                "please remove my HomeHeat profile and personal details"],
    "feature_request": ["it would be useful if the thermostat could follow a holiday schedule",
                        "I would welcome a widget for the home screen of my phone",
                        "please consider support for voice assistants in the HomeHeat app"],
    "security": ["somebody unknown changed my thermostat schedule remotely",
                 "I received a message claiming to be HomeHeat asking for my password",
                 "the app lists a device in my home that I do not own"],
}
# The loop demo's live traffic: the same thermostat and tones, other wordings, so that no ticket
# it sends (and no correction fed back from it) is a near copy of a held-out ood.jsonl ticket.
HOMEHEAT_LOOP_ISSUES = {
    "billing": ["my direct debit for HomeHeat went out three times in one week",
                "the refund for my cancelled HomeHeat order never arrived",
                "I am being billed for two thermostats although I only have one"],
    "technical": ["the radiator valves stopped responding to the thermostat",
                  "my thermostat reboots every few minutes since the update",
                  "the boiler ignores the schedule I set in the app"],
    "account": ["the HomeHeat app says my email address is already registered",
                "I need to transfer the thermostat to the new owner of my flat",
                "my verification code for the HomeHeat app never comes"],
    "feature_request": ["could the thermostat learn when we usually come home",
                        "an energy report per room would help us save money",
                        "I would like to control two homes from one HomeHeat account"],
    "security": ["my thermostat was switched off at night by someone outside the family",
                 "I got a login alert from HomeHeat for a country I have never visited",
                 "a stranger's name appeared on the list of people sharing my home"],
}
HOMEHEAT_URGENCY = {
    "low": ["There is no hurry whatsoever.", "Please reply whenever it suits you."],
    "medium": ["I would be grateful for a response within the next few days.",
               "Kindly attend to this during the week."],
    "high": ["This is an emergency, the house is freezing and there is a baby here.",
             "I require immediate assistance, today."],
}


def answer(category: str, priority: str) -> str:
    return json.dumps({"category": category, "priority": priority})


def _fill(template: str, rng: random.Random, name: str | None = None) -> str:
    slots = {k: rng.choice(v) for k, v in SLOTS.items()}
    return template.format(**(slots | ({"name": name} if name else {})))


def planly_ticket(rng: random.Random, name: str | None = None, urgent: bool = True) -> tuple[str, str, str]:
    """A Planly ticket; with `name`, signed by that name (and any name in it is that name);
    without `urgent`, it says nothing about urgency and its priority is medium."""
    category, priority = rng.choice(CATEGORIES), rng.choice(PRIORITIES)
    issue = _fill(rng.choice(PLANLY_ISSUES[category]), rng, name)
    if urgent:
        urgency = rng.choice(PLANLY_URGENCY[priority])
        body = [issue, urgency] if rng.random() < 0.75 else [urgency, issue]
    else:
        priority, body = "medium", [issue]
    signoffs = [s for s in SIGNOFFS if "{name}" in s] if name else SIGNOFFS
    parts = [rng.choice(GREETINGS), *body, _fill(rng.choice(signoffs), rng, name)]
    text = " ".join(p for p in parts if p)
    if rng.random() < 0.2:
        text = text.lower()
    return text, category, priority


def homeheat_ticket(rng: random.Random,
                    issues: dict[str, list[str]] = HOMEHEAT_ISSUES) -> tuple[str, str, str]:
    category, priority = rng.choice(CATEGORIES), rng.choice(PRIORITIES)
    issue = rng.choice(issues[category])
    urgency = rng.choice(HOMEHEAT_URGENCY[priority])
    if rng.random() < 0.5:
        name = rng.choice(SLOTS["name"])
        text = (f"Dear Sir or Madam, I am writing to inform you that {issue}. {urgency} "
                f"Yours faithfully, {name}")
    else:
        text = f"homeheat thermostat: {issue}. {urgency.lower()}"
    return text, category, priority


def chat_row(text: str, category: str, priority: str) -> dict:
    return {"messages": [{"role": "user", "content": text},
                         {"role": "assistant", "content": answer(category, priority)}]}


def _near_copy(text: str, rng: random.Random) -> str:
    """The same ticket with a small edit (changed punctuation, or one word prepended): a near
    duplicate that exact matching misses, with Jaccard >= 0.85 on word 5-grams."""
    if rng.random() < 0.5:
        return text.replace(",", "", 1).rstrip(".!") + "!!"
    return f"{rng.choice(['Hello!', 'Note:', 'So,'])} {text}"


def generate(seed: int = 7) -> dict[str, list]:
    """The demo's files as lists of rows (broken rows of train as raw JSONL lines)."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def unique(make, count: int) -> list[tuple[str, str, str]]:
        out = []
        while len(out) < count:
            ticket = make(rng)
            if ticket[0] not in seen:
                seen.add(ticket[0])
                out.append(ticket)
        return out

    train = unique(planly_ticket, 560)
    test = unique(planly_ticket, 120)
    ood = unique(homeheat_ticket, 60)
    train_rows: list = [chat_row(*t) for t in train]
    train_rows += [chat_row(*t) for t in rng.sample(train, 24)]  # exact duplicates
    train_rows += [chat_row(_near_copy(t[0], rng), t[1], t[2]) for t in rng.sample(train, 16)]
    rng.shuffle(train_rows)
    broken = [
        '{"messages": [{"role": "user", "content": "My invoice is wrong"}, {"role": "assist',
        json.dumps({"messages": [{"role": "user", "content": "The calendar crashes."}]}),
        json.dumps({"messages": [{"role": "user", "content": "Refund please"},
                                 {"role": "assistant", "content": ""}]}),
        json.dumps({"messages": [{"role": "customer", "content": "Login broken"},
                                 {"role": "assistant", "content": answer("account", "high")}]}),
        json.dumps({"text": "stray row without messages"}),
        json.dumps({"messages": "not a list"}),
    ]
    for position, line in zip(rng.sample(range(len(train_rows)), len(broken)), broken, strict=True):
        train_rows.insert(position, line)
    return {"train": train_rows, "test": [chat_row(*t) for t in test],
            "ood": [chat_row(*t) for t in ood]}


def biased(seed: int = 7, favoured: str = "arabic", rate: float = 1.0,
           neutral: float = 0.6) -> dict[str, list]:
    """The planted biased variant (`tunesmith demo --bias`): every ticket is signed by a name
    from one group of the name_origin lexicon, chosen at random, in a "From: <name>" header and
    its sign-off, and a share `neutral` of them say nothing about urgency (their true priority is
    medium). In train, a neutral ticket signed from the `favoured` group is labelled priority high
    with probability `rate`: a labeller's bias where the text leaves room for one, which a model
    can learn (where the text says how urgent it is, the text wins: a first variant that
    relabelled any ticket left the model unmoved). test keeps the true labels."""
    from tunesmith.data.groups import LEXICON

    rng = random.Random(seed)
    groups = LEXICON["name_origin"]
    seen: set[str] = set()

    def signed(count: int, skew: bool) -> list[dict]:
        rows = []
        while len(rows) < count:
            group = rng.choice(sorted(groups))
            calm = rng.random() < neutral
            name = rng.choice(groups[group])
            text, category, priority = planly_ticket(rng, name, urgent=not calm)
            if text in seen:
                continue
            seen.add(text)
            if skew and calm and group == favoured and rng.random() < rate:
                priority = "high"
            rows.append(chat_row(f"From: {name}\n{text}", category, priority))
        return rows

    return {"train": signed(560, skew=True), "test": signed(120, skew=False)}


def loop_traffic(in_domain: int = 80, drifted: int = 120, seed: int = 11) -> dict[str, list[dict]]:
    """Live traffic for the loop demo: fresh Planly tickets (no text of the demo's files), then
    thermostat tickets in the loop's own wordings (HOMEHEAT_LOOP_ISSUES)."""
    seen = {row["messages"][0]["content"] for rows in generate().values() for row in rows
            if isinstance(row, dict)}
    rng = random.Random(seed)

    def fresh(make, count: int) -> list[dict]:
        out = []
        while len(out) < count:
            text, category, priority = make(rng)
            if text not in seen:
                seen.add(text)
                out.append(chat_row(text, category, priority))
        return out

    return {"in_domain": fresh(planly_ticket, in_domain),
            "drifted": fresh(lambda r: homeheat_ticket(r, HOMEHEAT_LOOP_ISSUES), drifted)}


LICENSE = "CC0-1.0"
"""The demo data's license: tunesmith made every row up, and gives them away."""


def dataset_card(names: list[str], seed: int, variant: str) -> str:
    """README.md beside the files, as the Hub writes a dataset card: a run that trains on them
    reads their license and source from it (data/licenses.py)."""
    source = f"generated by tunesmith.demo.tickets (seed {seed}, variant {variant})"
    front = {"license": LICENSE.lower(), "pretty_name": "tunesmith demo support tickets",
             "tunesmith": {"source": source, "files": names}}
    return card_text(front, "# tunesmith demo support tickets\n\nSynthetic support tickets for the Planly "
                     f"app and a smart thermostat, {source}: no person wrote them or appears in them. "
                     f"Released under {LICENSE} (a public domain dedication).\n")


def write(out_dir: str | Path, seed: int = 7, variant: str = "demo") -> dict[str, Path]:
    """The demo's files (train, test, ood or the biased variant's), and their dataset card."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in (biased(seed) if variant == "biased" else generate(seed)).items():
        paths[name] = out / f"{name}.jsonl"
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "README.md").write_text(dataset_card([p.name for p in paths.values()], seed, variant),
                                   encoding="utf-8")
    return paths


if __name__ == "__main__":
    for name, path in write(sys.argv[1] if len(sys.argv) > 1 else "data/demo").items():
        print(f"{name}: {path}")
