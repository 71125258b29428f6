"""dedup-initializers: a scalar and a one-element vector hold the same bytes but are different
constants (Gather by a scalar drops the axis, by a [1] vector keeps it): never merged."""
from passcheck import check_pass, hits

H17 = '<ir_version: 8, opset_import: ["" : 17]>'


def test_scalar_and_one_element_vector_not_merged():
    result = check_pass(H17 + """
        g (float[3,4] x) => (float[4] a, float[1,4] b) <int64 s = {0}, int64[1] v = {0}> {
            a = Gather<axis = 0>(x, s)
            b = Gather<axis = 0>(x, v)
        }""", ["dedup-initializers"], expect_ops=["Gather", "Gather"])
    assert hits(result, "dedup-initializers")["initializers_merged"] == 0


def test_equal_vectors_still_merged():
    result = check_pass(H17 + """
        g (float[3,4] x) => (float[1,4] a, float[1,4] b) <int64[1] u = {0}, int64[1] v = {0}> {
            a = Gather<axis = 0>(x, u)
            b = Gather<axis = 0>(x, v)
        }""", ["dedup-initializers"], expect_ops=["Gather", "Gather"])
    assert hits(result, "dedup-initializers")["initializers_merged"] == 1
