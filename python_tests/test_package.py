import ccr_fast


def test_backends_report():
    info = ccr_fast.backends()
    assert set(info) == {"cpu", "cuda", "triton", "torch"}
    assert info["torch"]["usable"] is True
    assert info["cpu"]["compiled"] is True, info["cpu"]["detail"]
