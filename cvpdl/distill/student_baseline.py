"""The student trained alone with cross-entropy: the baseline every distiller is compared against."""
import torch.nn.functional as F

from cvpdl.distill.base import Distiller


class StudentBaseline(Distiller):
    needs_teacher = False  # nothing to distil: training skips the teacher's forward passes

    def losses(self, x, y, teacher_out):
        return {"loss_ce": F.cross_entropy(self.student(x)["logits"], y)}
