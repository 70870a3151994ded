"""The EM: frozen backbone + trained token head; words, phrases and sentences in one space."""


def load_run(run, **kwargs):
    from invemb.em.train import load_run as _load

    return _load(run, **kwargs)
