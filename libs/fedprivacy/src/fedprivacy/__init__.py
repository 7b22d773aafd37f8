"""Privacy math that more than one FedEngine process needs (design rule: shared code lives in
libs/, services meet only on topics)."""
