"""A tiny made-up statute book and questions for the neural retriever tests (not COLIEE text)."""

from retrieval.coliee import Article, Query


def _article(article_id: str, caption: str, *sentences: str) -> Article:
    text = "\n".join([f"({caption})", *sentences])
    return Article(article_id, caption, ("Part I Toy Code",), tuple(sentences), tuple(sentences), text)


ARTICLES = [
    _article("1", "Gardens", "A neighbour may pick fruit that falls over the fence.", "Trees must be trimmed each spring."),
    _article("2", "Boats", "A boat owner must paint the hull blue.", "Boats may not sail at night."),
    _article("3", "Bakeries", "Bread sold before noon must be fresh.", "A baker may close on rainy days."),
    _article("4", "Lanterns", "Every lantern must be lit at dusk."),
    _article("5", "Goats", "A goat that eats a hat makes its keeper pay for the hat.", "Goats may graze on public hills."),
    _article("6", "Bridges", "Tolls on wooden bridges are paid in copper coins.", "A bridge keeper may refuse carts."),
    _article("7", "Letters", "A letter sealed with wax is a binding promise.", "Unsealed letters bind no one."),
    _article("8", "Wells", "Water drawn from a shared well is free for all villagers."),
    _article("9-2", "Hats", "A hat maker answers for hats that shrink in the rain."),
    _article("10", "Owls", "Owls kept in towers must be fed mice on Sundays.", "An owl keeper may sell feathers."),
]

QUERIES = [
    Query("T-1", "Can my neighbour take the fruit that fell over my fence?", ("1",), "R01"),
    Query("T-2", "Must a boat hull be painted blue?", ("2",), "R01"),
    Query("T-3", "Is a baker allowed to close when it rains?", ("3",), "R01"),
    Query("T-4", "When must a lantern be lit?", ("4",), "R01"),
    Query("T-5", "Who pays for a hat eaten by a goat?", ("5", "9-2"), "R01"),
    Query("T-6", "How are bridge tolls paid?", ("6",), "R01"),
    Query("T-7", "Is a wax sealed letter a binding promise?", ("7",), "R01"),
    Query("T-8", "Do villagers pay for well water?", ("8",), "R01"),
    Query("T-9", "Does the hat maker answer when a hat shrinks in rain?", ("9-2",), "R02"),
    Query("T-10", "What must owls in towers be fed?", ("10",), "R02"),
]
