"""What Elasticsearch's inference services send to a rerank endpoint and how they parse its
answer, ported to Python so tests can replay Elasticsearch without running it.

A hand port, read from the sources (elastic/elasticsearch 8.19 / 9.1+,
x-pack/plugin/inference/src/main/java/org/elasticsearch/xpack/inference/; commits read:
015db297 CustomRequest, 7df83487 RerankResponseParser, f41bfb93 and b352e933
HuggingFaceRerankRequest(Entity), 8adfa45a HuggingFaceRerankResponseEntity, 0196a7c3
TextSimilarityRankFeaturePhaseRankCoordinatorContext):
  services/custom/request/CustomRequest.java        (headers + body template substitution)
  services/custom/request/RerankParameters.java     (${query} ${top_n} ${return_documents})
  services/custom/request/RequestParameters.java    (${input})
  common/JsonUtils.java                              (toJson: Jackson value -> JSON text)
  common/ValidatingSubstitutor.java                  (leftover ${...} -> IllegalArgumentException)
  common/MapPathExtractor.java                       ($.a[*].b paths; null/missing field -> error)
  services/custom/response/RerankResponseParser.java + BaseCustomResponseParser.java
  services/huggingface/request/rerank/HuggingFaceRerankRequest(.Entity).java
  services/huggingface/response/HuggingFaceRerankResponseEntity.java
  rank/textsimilarity/TextSimilarityRankFeaturePhaseRankCoordinatorContext.java
  services/huggingface/response/HuggingFaceErrorResponseEntity.java (``error`` read as a string)

Not modelled: StringSubstitutor's ``$${x}`` escape and ``${x:-default}`` syntax.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# ----------------------------------------------------------------------------- request side


def es_json(value: Any) -> str:
    """JsonUtils.toJson: Jackson, compact, UTF-8 (non-ASCII not escaped)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_PLACEHOLDER = re.compile(r"\$\{.*?\}")
_VAR = re.compile(r"\$\{([^}]*)\}")


def _substitute(template: str, params: dict[str, str], field: str) -> str:
    # org.apache.commons.text.StringSubstitutor(params, "${", "}"), then the check of
    # ValidatingSubstitutor.
    # (StringSubstitutor also supports "$${x}" escapes and "${x:-default}"; not modelled here.)
    out = _VAR.sub(lambda m: params.get(m.group(1), m.group(0)), template)
    left = _PLACEHOLDER.search(out)
    if left:
        raise ValueError(
            f"Found placeholder [{left.group(0)}] in field [{field}] after replacement call, "
            "please check that all templates have a corresponding field definition."
        )
    return out


def custom_request(
    *,
    url: str,
    headers: dict[str, str],
    request_template: str,
    query: str,
    documents: list[str],
    top_n: int | None = None,
    return_documents: bool | None = None,
    secret_parameters: dict[str, Any] | None = None,
    task_parameters: dict[str, Any] | None = None,
) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) that the `custom` service POSTs for a rerank call."""
    secret_parameters = secret_parameters or {}
    task_parameters = task_parameters or {}
    # header/url params: only string values of secret_parameters and task_settings.parameters
    string_params = {
        k: v for k, v in {**secret_parameters, **task_parameters}.items() if isinstance(v, str)
    }
    # body params: every secret/task param JSON-encoded, then the request parameters on top
    json_params = {k: es_json(v) for k, v in {**secret_parameters, **task_parameters}.items()}
    json_params["input"] = es_json(documents)
    json_params["query"] = es_json(
        query
    )  # quoted: the template must NOT put quotes around ${query}
    if top_n is not None:
        json_params["top_n"] = es_json(top_n)
    if return_documents is not None:
        json_params["return_documents"] = es_json(return_documents)
    out_headers = {
        "Content-Type": "application/json"
    }  # XContentType.JSON.mediaType(); user header may replace it
    for k, v in headers.items():
        out_headers[k] = _substitute(v, string_params, f"header.{k}")
    body = _substitute(request_template, json_params, "request").encode("utf-8")
    return _substitute(url, string_params, "url"), out_headers, body


def hugging_face_request(
    *,
    url: str,
    api_key: str,
    query: str,
    documents: list[str],
    return_documents: bool | None = None,
    top_n: int | None = None,
) -> tuple[str, dict[str, str], bytes]:
    """HuggingFaceRerankRequest + HuggingFaceRerankRequestEntity (field order: texts, query,
    return_text, top_n)."""
    body: dict[str, Any] = {"texts": documents, "query": query}
    if return_documents is not None:
        body["return_text"] = return_documents
    if top_n is not None:
        body["top_n"] = top_n
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    return url, headers, es_json(body).encode("utf-8")


# ---------------------------------------------------------------------------- response side


class ParseError(Exception):
    pass


def _extract(data: Any, path: str) -> Any:
    """MapPathExtractor.extract: '$' + ('.field' | '[*]')*; a missing OR null field raises."""
    if not isinstance(data, dict):
        # BaseCustomResponseParser does jsonParser.map(): a top-level array is not accepted
        raise ParseError("response body is not a JSON object")
    path = path.strip()
    if not path.startswith("$"):
        raise ParseError(f"Path [{path}] must start with a dollar sign ($)")

    def nav(cur: Any, rest: str) -> Any:
        if cur is None or rest == "":
            return cur
        m = re.match(r"^\.([^.\[]+)(.*)$", rest)
        if m:
            if not isinstance(cur, dict):
                raise ParseError(
                    f"Current path [{rest}] matched the dot field pattern but the current "
                    "object is not a map"
                )
            if cur.get(m.group(1)) is None:
                raise ParseError(f"Unable to find field [{m.group(1)}] in map")
            return nav(cur[m.group(1)], m.group(2))
        m = re.match(r"^\[\*\](.*)$", rest)
        if m:
            if not isinstance(cur, list):
                raise ParseError(
                    f"Current path [{rest}] matched the array field pattern but the current "
                    "object is not a list"
                )
            return [r for r in (nav(x, m.group(1)) for x in cur) if r is not None]
        raise ParseError(f"Invalid path received [{rest}], unable to extract a field name.")

    return nav(data, path[1:])


def _numbers(obj: Any, what: str) -> list[float]:
    if not isinstance(obj, list):
        raise ParseError(f"Failed to parse rerank {what}: expected a list")
    out = []
    for i, x in enumerate(obj):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ParseError(
                f"Failed to parse list entry [{i}]: Unable to convert to Number: {x!r}"
            )
        out.append(x)
    return out


def custom_parse_rerank(
    body: bytes,
    *,
    relevance_score: str,
    reranked_index: str | None = None,
    document_text: str | None = None,
) -> list[tuple[int, float, str | None]]:
    """RerankResponseParser.transform -> RankedDocsResults (index, score, text), in the
    answer's order."""
    data = json.loads(body)
    scores = [float(x) for x in _numbers(_extract(data, relevance_score), "scores")]
    indices = None
    if reranked_index is not None:
        indices = [
            int(x) for x in _numbers(_extract(data, reranked_index), "indices")
        ]  # Number.intValue()
        if len(indices) != len(scores):
            raise ParseError(
                f"The number of index fields [{len(indices)}] was not the same as the number "
                f"of scores [{len(scores)}]"
            )
    docs = None
    if document_text is not None:
        docs = _extract(data, document_text)
        if (
            not isinstance(docs, list)
            or any(not isinstance(d, str) for d in docs)
            or len(docs) != len(scores)
        ):
            raise ParseError("Failed to parse rerank documents")
    # no reranked_index path: the i-th score is taken to belong to input i (position!)
    return [
        (indices[i] if indices else i, scores[i], docs[i] if docs else None)
        for i in range(len(scores))
    ]


def hugging_face_parse_rerank(
    body: bytes, *, top_n: int | None = None
) -> list[tuple[int, float, str | None]]:
    """HuggingFaceRerankResponseEntity: top-level array of {index:int, score:float, text?:str};
    unknown fields ignored; re-sorted by score desc; cut to top_n (request/task settings) if set."""
    data = json.loads(body)
    if not isinstance(data, list):
        raise ParseError("expected a top-level JSON array")
    out = []
    for e in data:
        if not isinstance(e, dict) or "index" not in e or "score" not in e:
            raise ParseError("Required [index, score]")
        if e["index"] is None or e["score"] is None:
            raise ParseError("[hugging_face_rerank_response] failed to parse field (null)")
        if isinstance(e["score"], bool) or not isinstance(e["score"], (int, float, str)):
            raise ParseError("score is not a number")
        text = e.get("text")
        if text is not None and not isinstance(text, str):
            raise ParseError("text is not a string")
        out.append((int(e["index"]), float(e["score"]), text))
    out.sort(key=lambda t: t[1], reverse=True)
    return out[:top_n] if top_n is not None else out


def text_similarity_scores(ranked: list[tuple[int, float, str | None]], n_docs: int) -> list[float]:
    """TextSimilarityRankFeaturePhaseRankCoordinatorContext.extractScoresFromRankedDocs and
    its count check."""
    scores = [0.0] * len(ranked)
    for idx, score, _ in ranked:
        scores[idx] = score  # IndexError here == ArrayIndexOutOfBounds in ES
    if len(scores) != n_docs:
        raise ParseError(
            "Reranker input document count and returned score count mismatch: "
            f"[{n_docs}] vs [{len(scores)}]"
        )
    return scores


def es_normalize(score: float) -> float:
    """text_similarity_reranker maps any score to a positive one: max(s,0) + min(exp(s),1)."""
    return max(score, 0.0) + min(math.exp(score), 1.0)


def hugging_face_error(body: bytes) -> str:
    """HuggingFaceErrorResponseEntity: the message is ``error`` when it is a string;
    anything else (an object, no JSON) shows as "undefined error"."""
    try:
        data = json.loads(body)
    except ValueError:
        return "undefined error"
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, str) else "undefined error"
