"""The usual request, decoded and answered without the general machinery.

Most inference requests look alike: one row, every input the model declares in its order,
each named, shaped and typed as declared, nothing else asked. For such a request the
general road (:func:`~openlearner.predictor.protocol.decode_request`, the route,
``_check_inputs``, the response objects and their encoding) builds a dozen objects whose
only purpose is to cover every other request. A :class:`UsualRoad`, made once per loaded
version, recognises the usual request in one pass over the parsed JSON, hands back the
tensors the general road would have built (converted by the very same functions), and
writes the answer the general road would have written, byte for byte. Anything else it
declines (``None``), and the general road answers it, errors included: the usual road
never refuses a request itself.

Two shapes of model have a usual request:

* every serving input one-dimensional (``[-1]``) and of one numeric datatype (a model that
  reads the Feature Store: entity keys and request inputs): each input ``shape [1]`` with
  ``data`` a list of one number, or, in the binary tensor extension, its 8-or-fewer bytes;
* a single input ``[-1, F]`` of a numeric datatype (a raw feature vector): ``shape [1, F]``
  with ``data`` a flat list of ``F`` numbers, or ``F`` values in binary.

A request may carry an ``id`` (echoed) and, in the binary extension, ``parameters:
{"binary_data_output": true|false}``; any other key (``outputs``, other parameters) takes
the general road. Outputs must be numeric or BOOL (text is encoded by the general road).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from openlearner.predictor.protocol import (
    _LITTLE_ENDIAN,
    _NUMERIC_DTYPES,
    InferenceResponse,
    InferOutput,
    _flat_numbers,
    encode_body,
)

if TYPE_CHECKING:
    from openlearner.predictor.model import LoadedModel

__all__ = ["UsualRoad"]

Tensors = dict[str, npt.NDArray[Any]]


class UsualRoad:
    """Recognises one loaded version's usual request and writes its answer (see the module)."""

    __slots__ = (
        "_columns",
        "_datatype",
        "_dtype",
        "_itemsize",
        "_little",
        "_names",
        "_outputs",
        "_version",
    )

    def __init__(
        self, model: LoadedModel, names: tuple[str, ...], datatype: str, columns: int | None
    ) -> None:
        self._names = names
        self._datatype = datatype
        self._dtype = _NUMERIC_DTYPES[datatype]
        self._little = _LITTLE_ENDIAN[datatype]
        self._itemsize = self._dtype.itemsize
        self._columns = columns
        """F for a ``[-1, F]`` input; None when every input is one-dimensional."""
        self._outputs = {o.name: o.datatype for o in model.outputs}
        self._version = str(model.number)

    @classmethod
    def of(cls, model: LoadedModel) -> UsualRoad | None:
        """The road for ``model``, or None when its inputs or outputs have no usual request."""
        inputs = model.inputs
        if not inputs or any(
            o.datatype not in _NUMERIC_DTYPES and o.datatype != "BOOL" for o in model.outputs
        ):
            return None
        datatype = inputs[0].datatype
        if datatype not in _NUMERIC_DTYPES or any(t.datatype != datatype for t in inputs):
            return None
        names = tuple(t.name for t in inputs)
        if all(t.shape == [-1] for t in inputs):
            return cls(model, names, datatype, None)
        shape = inputs[0].shape
        if len(inputs) == 1 and len(shape) == 2 and shape[0] == -1 and shape[1] > 0:
            return cls(model, names, datatype, shape[1])
        return None

    @property
    def inputs(self) -> tuple[tuple[str, ...], str, int | None]:
        """The usual request's input names in order, their one datatype, and ``F`` for a
        ``[-1, F]`` input (None when every input is one-dimensional)."""
        return self._names, self._datatype, self._columns

    def response(self, name: str, outputs: Tensors, request_id: str | None) -> InferenceResponse:
        """The general road's response to a usual request, for a transport that encodes it
        itself (gRPC): every output, in the model's order."""
        return InferenceResponse(
            model_name=name,
            model_version=self._version,
            id=request_id,
            outputs=[InferOutput(*output) for output in self._described(outputs)],
        )

    def _described(self, outputs: Tensors) -> list[tuple[str, str, list[int], npt.NDArray[Any]]]:
        """Each output as (name, datatype, shape, data), in the order the model gave them."""
        datatypes = self._outputs
        return [(o, datatypes.get(o, "FP32"), list(data.shape), data) for o, data in outputs.items()]

    def decode(
        self, body: bytes | memoryview, tail: memoryview | None = None
    ) -> tuple[Tensors, str | None, bool] | None:
        """The tensors (one row), the request ``id`` and whether outputs go back in binary, for a
        usual request; None for any other (the general road answers it).

        ``body`` is the JSON (the header, for the binary extension, whose tensor data is ``tail``).
        """
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(payload) is not dict:
            return None
        raw = payload.get("inputs")
        names = self._names
        if type(raw) is not list or len(raw) != len(names):
            return None
        request_id = payload.get("id")
        binary_out = False
        extra = len(payload) - 1 - ("id" in payload)
        if tail is not None and extra == 1:
            parameters = payload.get("parameters")
            if type(parameters) is not dict or len(parameters) != 1:
                return None
            flag = parameters.get("binary_data_output")
            if type(flag) is not bool:
                return None
            binary_out = flag
        elif extra:
            return None
        if request_id is not None and type(request_id) is not str:
            return None
        datatype, columns = self._datatype, self._columns
        shape = [1] if columns is None else [1, columns]
        last = shape[-1]
        payload_key = "data" if tail is None else "parameters"
        values: list[Any] = []
        for item, name in zip(raw, names, strict=True):
            # Exactly its four keys (four, these three among them, and the fourth read below).
            if (
                type(item) is not dict
                or len(item) != 4
                or item.get("name") != name
                or item.get("datatype") != datatype
            ):
                return None
            given = item.get("shape")
            if given != shape or type(given[0]) is not int or type(given[-1]) is not int:
                return None  # ([1] == [True] == [1.0]: a dimension must be an int)
            data = item.get(payload_key)
            if tail is None:
                if type(data) is not list or len(data) != last:
                    return None
                if columns is None:
                    values.append(data[0])
                else:
                    values = data
            else:
                if type(data) is not dict or len(data) != 1:
                    return None
                size = data.get("binary_data_size")
                if type(size) is not int or size != last * self._itemsize:
                    return None
        if tail is None:
            try:  # checked and converted as the general road converts them
                array = _flat_numbers(values, datatype, self._dtype)
            except ValueError:
                return None  # the general road names the problem
            if array is None:
                return None
        else:
            if len(tail) != len(names) * last * self._itemsize:
                return None
            array = np.frombuffer(tail, dtype=self._little).astype(self._dtype.newbyteorder("="))
        if columns is not None:
            return {names[0]: array.reshape(shape)}, request_id, binary_out
        return {name: array[i : i + 1] for i, name in enumerate(names)}, request_id, binary_out

    def encode(
        self, name: str, outputs: Tensors, request_id: str | None, binary: bool
    ) -> tuple[bytes, int | None]:
        """The answer's body, and its JSON header's length when its outputs are binary
        (:func:`~openlearner.predictor.protocol.encode_body`, as the general road writes it)."""
        body, header = encode_body(
            name,
            self._version,
            self._described(outputs),
            request_id,
            outputs.keys() if binary else (),
        )
        return body, header if binary else None
